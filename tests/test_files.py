"""kmcl_jax.files: whether a file is there, locally and on gs:// (the GCS emulator)."""

from kmcl_jax.files import file_exists, files_exist


def test_a_file_exists_and_a_folder_or_nothing_does_not(tmp_path):
  (tmp_path / "a.jpg").write_bytes(b"jpeg")
  (tmp_path / "folder").mkdir()
  paths = [str(tmp_path / name) for name in ("a.jpg", "folder", "missing.jpg")]
  assert files_exist(paths, threads=2) == [True, False, False]


def test_on_gs_a_missing_object_and_a_folder_prefix_are_no_file(gcs):
  # etils up to 1.9 answers is_file() with `not is_dir()`: True for a missing object.
  folder = gcs.workdir("exists")
  gcs.blob(folder, "images/a.jpg").upload_from_string(b"jpeg")
  assert file_exists(f"{folder}/images/a.jpg")
  assert not file_exists(f"{folder}/a.jpg")
  assert not file_exists(f"{folder}/images")
  assert files_exist([f"{folder}/images/a.jpg", f"{folder}/b.jpg"], threads=2) == [True, False]
