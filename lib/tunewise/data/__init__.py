"""Images in, one cached uint8 tensor out: sources (digits, synthetic, class folders, CSV),
decoding, content fingerprints (data identity), the disk and memory cache, stratified
splits, and batches sliced on the device.

Knows nothing of training, studies or notebooks."""
