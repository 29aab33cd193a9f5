"""DAGM 2007 surface-defect detection: data, model and artefact shared by both images."""
