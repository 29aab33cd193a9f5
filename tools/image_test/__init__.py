"""`make image-test`: both images built from the committed Dockerfiles and run for real
(`PYTHONPATH=tools python -m image_test --help`)."""
