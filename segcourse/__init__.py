"""segcourse: the helper package of the image-segmentation course.

Modules (flat, named by noun):

- ``runtime``  seeding and device choice
- ``masks``    mask rules: ignore label, palette, paired image/mask transforms
- ``data``     offline datasets (shapes, digits, cells) and the bundled photos
- ``realdata`` Oxford-IIIT Pet, Penn-Fudan and PASCAL VOC for users with internet
- ``plots``    image / mask / overlay grids with one palette
- ``train``    a small training loop with time and step budgets
- ``metrics``  confusion matrix, pixel accuracy, mean IoU
- ``grading``  the check API that notebook test cells call
"""

__version__ = "0.1.0"
