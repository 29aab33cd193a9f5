"""The DAGM 2007 competition layout: labels, reader, synthetic generator, tensors."""
