"""A small signed example repository (``repo/``) and the script that generates it."""
