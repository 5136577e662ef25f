"""logs.Writer: TensorBoard event files written without TensorFlow, read back by tensorboard."""

import json
import subprocess
import sys
import textwrap

from helpers import ROOT

# Run in a child where `import tensorflow` fails, as on a host without it (macOS, Linux ARM, a
# default install): the writer must not need it, and tensorboard's own reader reads its file.
_CHILD = textwrap.dedent("""
    import io, json, sys
    sys.modules["tensorflow"] = None          # `import tensorflow` raises ImportError
    import numpy as np
    from PIL import Image
    from simclr_jax import logs

    workdir = sys.argv[1]
    writer = logs.Writer(workdir)
    writer.write_scalars(1, {"loss": 5.25, "learning_rate": 0.0})
    writer.write_scalars(2, {"loss": 4.5, "learning_rate": 0.125})
    sheet = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    writer.write_images(0, {"augment/views": sheet[None]})
    writer.write_hparams({"optim.name": "lars", "train.batch_size": 256, "model.cifar_stem": True})
    writer.close()

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2
    from tensorboard.util import tensor_util
    acc = EventAccumulator(workdir, size_guidance={"tensors": 0})
    acc.Reload()
    loss = {e.step: float(tensor_util.make_ndarray(e.tensor_proto)) for e in acc.Tensors("loss")}
    (image,) = acc.Tensors("augment/views")
    strings = tensor_util.make_ndarray(image.tensor_proto)
    png = np.asarray(Image.open(io.BytesIO(bytes(strings[2]))))
    (content,) = acc.PluginTagToContent("hparams").values()
    info = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    print(json.dumps({
        "loss": loss,
        "plugin": acc.summary_metadata["loss"].plugin_data.plugin_name,
        "size": [int(strings[0]), int(strings[1])],
        "png_equal": bool(np.array_equal(png, sheet)),
        "hparams": {k: str(v).strip() for k, v in info.hparams.items()},
        "tensorflow_loaded": sys.modules.get("tensorflow") is not None}))
""")


def test_events_written_without_tensorflow_read_back_by_tensorboard(tmp_path):
  out = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  got = json.loads(out.stdout.strip().splitlines()[-1])
  assert got["loss"] == {"1": 5.25, "2": 4.5}
  assert got["plugin"] == "scalars"          # TensorBoard's Scalars tab shows it
  assert got["size"] == [6, 4] and got["png_equal"]
  assert got["hparams"] == {"optim.name": 'string_value: "lars"',
                            "train.batch_size": "number_value: 256",
                            "model.cifar_stem": "bool_value: true"}
  assert not got["tensorflow_loaded"]
