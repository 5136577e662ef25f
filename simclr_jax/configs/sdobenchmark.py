"""SimCLR on SDOBenchmark magnetograms: SolarNet's SDO recipe (sdo.py) on SDOBenchmark.

  simclr-jax pretrain --config sdobenchmark --workdir runs/sdobenchmark \
      --linear_eval
  simclr-jax finetune --workdir runs/sdobenchmark     # flare classifier: TSS, HSS

SolarNet's own protocol pretrains on SDOML (sdo.py) and fine-tunes on SDOBenchmark:

  simclr-jax finetune --workdir runs/sdo --config.data.source=sdobenchmark \
      --config.data.path=data/SDOBenchmark-data-full --config.data.sdobenchmark.skip_missing=True

Data: SDOBenchmark (https://github.com/i4Ds/SDOBenchmark) unpacked at data/SDOBenchmark-data-full
(`--config.data.path=...` elsewhere): training/ and test/, each with meta_data.csv
(id,start,end,peak_flux) and `<AR>/<date>_<k>/<time>__magnetogram.jpg` (256x256, gray 127.5 =
0 G, ±250 G). Without it the run stops with "no data at .../training/meta_data.csv ... see
README.md § Data". Input: the magnetogram at time step 3 (11h50 after the sample's start, as
SolarNet uses; `--config.data.sdobenchmark.time_steps='(0,1,2,3)' --config.data.channels=4`
stacks all four), p / 127.5 - 1 in [-1, 1], resized to 128. Samples missing that image are
dropped and counted in the log (data.sdobenchmark.skip_missing, as SolarNet does). Splits:
'train' / 'val' from training/, whole active regions on one side (10 % of the samples to 'val'); 'test' is test/.
Labels: Quiet (< 1e-6 W/m²) and >=C (>= 1e-6), for the online head and the probe.
Protocol (sdo.py, SolarNet's): online head with its own Adam 1e-5; every epoch kNN and
online scores on 'val' (whole active regions apart from training), the best epoch by online
validation loss kept in checkpoints_best and used by linear_eval and finetune, patience 200
epochs; fine-tuning with SolarNet's evaluator head (128 hidden, dropout 0.2), encoder Adam 1e-4,
head 1e-3, batch 128, up to 50 epochs with patience 10, beside the same model from scratch,
scored by TSS and HSS of '>=C' on 'test' (finetune.json, finetune.md).

Expect: no published SimCLR-on-SDOBenchmark figure; compare the probe's TSS on 'test' with
SolarNet's SDOBenchmark results (supervised baseline TSS 0.607; SimCLR pretrained on SDOML then
fine-tuned 0.646). `--config sdobenchmark:tiny` is the same shrunk for tests.
"""

from simclr_jax.configs import default, sdo


def get_config(arg=None):
  c = sdo.get_config()
  c.data.source = "sdobenchmark"
  c.data.path = "data/SDOBenchmark-data-full"
  c.data.train_split = "train"
  c.data.eval_split = "test"
  c.data.sdobenchmark.channel_names = ("magnetogram",)
  c.data.sdobenchmark.time_steps = (3,)
  c.data.channels = 1
  c.data.image_size = 128
  c.data.sdobenchmark.val_fraction = 0.1
  c.data.sdobenchmark.split_seed = 0
  c.data.sdobenchmark.skip_missing = True
  # Fewer, smaller images than SDOML: a smaller batch keeps tens of steps per epoch.
  c.train.batch_size = 256
  c.train.epochs = 500
  if arg == "tiny":
    default.shrink(c, image_size=32)
    c.optim.warmup_epochs = 1.0
  elif arg:
    raise ValueError(f"config sdobenchmark: unknown variant {arg!r}; expected 'tiny' or none")
  return c
