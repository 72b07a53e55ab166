"""Deployment bundles for the devices spac-ort targets (``spac-export target``):
Android phones (`android`) and Jetson boards (`jetson`), with cost models estimated from
their published specifications (`hardware`)."""
