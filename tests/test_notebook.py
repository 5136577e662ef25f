"""docs/quickstart.ipynb runs top to bottom (nbclient), as a user runs it from a clone's docs/."""

from __future__ import annotations

import os
import shutil

import pytest

from helpers import ROOT


@pytest.mark.slow
def test_quickstart_notebook_runs_top_to_bottom(tmp_path):
  import nbformat
  from nbclient import NotebookClient
  docs = tmp_path / "docs"
  docs.mkdir()
  shutil.copy(os.path.join(ROOT, "docs", "quickstart.ipynb"), docs)
  os.symlink(os.path.join(ROOT, "tests"), tmp_path / "tests")     # ../tests/data, as in a clone
  nb = nbformat.read(docs / "quickstart.ipynb", as_version=4)
  NotebookClient(nb, timeout=900, kernel_name="python3",
                 resources={"metadata": {"path": str(docs)}}).execute()
  errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if o.output_type == "error"]
  assert not errors, errors
  for name in ("my_digits.npz", "my_digits_map.png", "my_digits_neighbours.png", "hmi.csv",
               "hmi_map.png", "hmi_neighbours.png", "quickstart_digits/linear_eval.json",
               "quickstart_digits/report.md", "quickstart_hmi/report.md"):
    assert (docs / "runs" / name).exists(), name
  images = sum(1 for c in nb.cells for o in c.get("outputs", [])
               if o.output_type == "display_data" and "image/png" in o.get("data", {}))
  assert images == 4
  text = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", [])
                 if o.output_type == "stream")
  assert "(300, 128)" in text and "(84, 128)" in text
  assert "['Br', 'magnetogram']" in text
