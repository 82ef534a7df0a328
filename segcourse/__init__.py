"""segcourse: the helper package of the image-segmentation course.

Modules (flat, named by noun):

- ``runtime``  seeding and device choice
- ``masks``    mask rules: ignore label, palette, paired image/mask transforms
- ``data``     offline datasets (shapes, digits, cells) and the bundled photos
- ``realdata`` Oxford-IIIT Pet, Penn-Fudan and PASCAL VOC for users with internet
- ``plots``    image / mask / overlay grids with one palette
- ``train``    a small training loop with time and step budgets
- ``metrics``  confusion matrix, pixel accuracy, mean IoU
- ``checkpoints`` the small trained models shipped in ``data/checkpoints/``
- ``grading``  the check API that notebook test cells call (runs in the student's kernel)
- ``verify``   comparing outputs with references (pure; used by both sides of grading)
- ``grader/``  the trusted side, never run in a student's kernel: reference runs, the
  sandbox, nbgrader preprocessors, release and grade
- ``cli``, ``doctor``, ``bench``: the ``segcourse`` command
"""

__version__ = "0.1.0"
