"""Every check id in the notebooks has an intact reference, and every reference has a check."""

import hashlib

import pytest

from segcourse.grader.course import check_ids_in_notebook, course_dir, find_notebooks
from segcourse.verify import CHECK_ID_PATTERN, load_manifest, reference_path

REFERENCES = course_dir() / "references"
MANIFEST = {entry["check"]: entry for entry in load_manifest(REFERENCES)["references"]}
CHECK_IDS = sorted({cid for nb in find_notebooks() for cid in check_ids_in_notebook(nb)})
FIELDS = {"check", "file", "sha256", "device", "torch", "cuda", "seed", "tolerance"}


def test_notebooks_have_checks():
    assert CHECK_IDS, "no grading.check calls found in notebooks/"


@pytest.mark.parametrize("check_id", CHECK_IDS)
def test_check_has_an_intact_reference(check_id):
    assert CHECK_ID_PATTERN.match(check_id), f"bad check id {check_id!r}"
    assert check_id in MANIFEST, f"{check_id}: not recorded; run `segcourse references`"
    entry = MANIFEST[check_id]
    assert FIELDS <= set(entry), f"{check_id}: manifest entry lacks {FIELDS - set(entry)}"
    path = REFERENCES / entry["file"]
    assert path == reference_path(check_id, REFERENCES)
    assert path.exists(), f"{path} is missing"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"], f"{path} changed"
    assert entry["device"] == "cpu" or entry["device"].startswith("cuda")
    assert (entry["cuda"] is None) == (entry["device"] == "cpu")


def test_check_ids_are_unique_per_notebook():
    for notebook in find_notebooks():
        ids = check_ids_in_notebook(notebook)
        duplicates = {cid for cid in ids if ids.count(cid) > 1}
        assert not duplicates, f"{notebook.stem}: check ids used twice: {duplicates}"
        wrong = [cid for cid in ids if not cid.startswith(notebook.stem + ".")]
        assert not wrong, f"{notebook.stem}: check ids must start with the notebook name: {wrong}"


def test_no_orphan_references():
    orphans = sorted(set(MANIFEST) - set(CHECK_IDS))
    assert not orphans, f"references without a check in any notebook: {orphans}"
    files = {p.relative_to(REFERENCES).as_posix() for p in REFERENCES.rglob("*.pt")}
    assert files == {entry["file"] for entry in MANIFEST.values()}
