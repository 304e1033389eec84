"""protloc's test suite: one folder per package of src/protloc, shared helpers in tests.helpers."""
