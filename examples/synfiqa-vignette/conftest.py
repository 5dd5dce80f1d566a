# Lets `pytest tests/` import synfiqa_vignette from this folder before it is installed
# (pytest puts the folder of a conftest.py on sys.path).
