"""segcourse.bench's notebook timer: wall seconds and the kernel's own CPU seconds."""

import nbformat

from segcourse.bench import time_notebook


def test_time_notebook_counts_the_kernels_cpu_seconds(tmp_path):
    """A cell that keeps one core busy for 1 s of CPU time: the kernel's CPU seconds (a child
    process, counted once it has exited) include it, and the wall time is at least as long."""
    burn = ("import time\nstart = time.process_time()\n"
            "while time.process_time() - start < 1.0:\n    pass\n")
    idle = "import time\ntime.sleep(1.0)\n"
    for name, source in [("burn", burn), ("idle", idle)]:
        notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source)])
        nbformat.write(notebook, tmp_path / f"{name}.ipynb")
    burn_wall, burn_cpu = time_notebook(tmp_path / "burn.ipynb", timeout=60)
    idle_wall, idle_cpu = time_notebook(tmp_path / "idle.ipynb", timeout=60)
    assert burn_cpu >= 1.0 and burn_wall >= 1.0
    assert idle_wall >= 1.0 and idle_cpu < burn_cpu  # sleeping costs wall time, not CPU time
