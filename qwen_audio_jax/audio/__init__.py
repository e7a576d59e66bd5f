"""Audio front-end: reading, resampling, log-mel features, SpecAugment, length bookkeeping."""
