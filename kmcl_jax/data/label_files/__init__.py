"""The user's own multilabel images and label files as a dataset (data.name="labels").

Label files, local or gs://, UTF-8 with or without a BOM, any line endings; the format is
found from the content (config.data.labels_format="auto") or named:
  delimited  CSV, an image column and one label column: names or integer ids joined by a
             space, "|", ";" or "," (Planet/Amazon "image_name,tags", HPA "Id,Target")
  columns    CSV, one 1/0/-1 column per class (-1: left out of AP; ADP, CheXpert)
  long       CSV, one row per (image, label) (Open Images; Confidence 0 rows add no label)
  jsonl      {"image": "a.jpg", "labels": ["cat", "dog"]} per line
  coco       a COCO-format annotation file (CVAT, Label Studio, Roboflow exports)
Splits: data.train_labels and data.eval_labels; or one file with a split column
(data.split_column, values data.train_split and data.eval_split); or one file of which a
seeded data.holdout_fraction of the images is evaluated on. Classes: the class-list file
data.class_list, or the sorted labels (recorded in the run's run.json). Image names are
relative to data.root (or to the label file's folder), with data.image_extension added
to names without one. Every bad input is one LabelFileError naming file, row and value.
"""

from kmcl_jax.data.label_files.formats import FORMATS
from kmcl_jax.data.label_files.source import NAME, labels_source
from kmcl_jax.data.label_files.text import LabelFileError

__all__ = ["FORMATS", "NAME", "LabelFileError", "labels_source"]
