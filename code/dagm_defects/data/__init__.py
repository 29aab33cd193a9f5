"""The DAGM 2007 competition layout: labels, reader, tensors (the synthetic generator is dagm_synth, synth/)."""
