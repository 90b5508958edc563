"""examples/fashion_mnist.ipynb runs top to bottom in a real Jupyter kernel, in quick mode
(TINYCNN_NOTEBOOK_QUICK=1), and draws its pictures. Needs the `notebook` extra:
pip install -e ".[notebook]" (nbclient and ipykernel)."""
import json
import sys
from pathlib import Path

import pytest

nbclient = pytest.importorskip("nbclient", reason='needs nbclient: pip install -e ".[notebook]"')
pytest.importorskip("ipykernel", reason='needs ipykernel, the Jupyter kernel: pip install -e ".[notebook]"')
import nbformat  # noqa: E402  (installed with nbclient)

NOTEBOOK = Path(__file__).resolve().parent.parent / "examples" / "fashion_mnist.ipynb"


def test_the_notebook_is_stored_without_outputs():
    stored = json.loads(NOTEBOOK.read_text())
    code_cells = [cell for cell in stored["cells"] if cell["cell_type"] == "code"]
    assert code_cells and all(cell["outputs"] == [] and cell["execution_count"] is None for cell in code_cells)
    nbformat.validate(nbformat.reads(NOTEBOOK.read_text(), as_version=4))


@pytest.fixture(scope="module")
def executed():
    """The notebook after a quick run in a python3 kernel (this Python's, from its kernel spec),
    with one cell appended that prints the kernel's Python."""
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    notebook.cells.append(nbformat.v4.new_code_cell("import sys; print('kernel python:', sys.executable)"))
    with pytest.MonkeyPatch.context() as patch:              # the kernel inherits this environment
        patch.setenv("TINYCNN_NOTEBOOK_QUICK", "1")
        patch.setenv("OPENBLAS_NUM_THREADS", "1")            # 2 shared cores: one BLAS thread is far faster
        patch.delenv("MPLBACKEND", raising=False)            # the notebook's %matplotlib inline decides
        client = nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                                         resources={"metadata": {"path": str(NOTEBOOK.parent)}})
        client.execute()                                     # raises CellExecutionError if a cell fails
    return notebook


def printed(cell):
    return "".join(output.get("text", "") for output in cell.outputs if output.output_type == "stream"
                   and output.name == "stdout")


def test_every_cell_runs_in_the_environments_python(executed):
    code_cells = [cell for cell in executed.cells if cell.cell_type == "code"]
    assert all(cell.execution_count is not None for cell in code_cells)
    assert not [output for cell in code_cells for output in cell.outputs if output.output_type == "error"]
    assert printed(code_cells[-1]).strip() == f"kernel python: {sys.executable}"
    assert "quick mode" in printed(code_cells[0])


def test_the_pictures_come_out_where_the_notebook_draws(executed):
    drawing = [cell for cell in executed.cells if "picture" in cell.metadata.get("tags", [])]
    assert len(drawing) == 9                                 # 3x3 grids, curves, activation grids, box plot, augmented
    for cell in drawing:
        pictures = [output for output in cell.outputs if "image/png" in output.get("data", {})]
        assert len(pictures) == 1, cell.source[:200]         # exactly one: no picture drawn twice
    others = [cell for cell in executed.cells if cell.cell_type == "code" and cell not in drawing]
    assert not [cell for cell in others for output in cell.outputs if "image/png" in output.get("data", {})]


def test_the_notebooks_numbers(executed):
    text = "\n".join(printed(cell) for cell in executed.cells if cell.cell_type == "code")
    for total in ("Total params: 542,230", "Total params: 101,770", "Total params: 243,786", "Total params: 468,778"):
        assert total in text
    assert "model has 5 layers" in text and "layer 0, shape = (1, 26, 26, 32)" in text
    assert "layer 3, shape = (1, 5, 5, 64)" in text
    scores = [line for line in text.splitlines() if line.startswith("> ")]
    assert len(scores) == 1 + 3                              # model 1's test score, then one per fold
    assert "Accuracy: mean=" in text and "n=3" in text
    assert "best model after 2 epochs: test accuracy" in text
