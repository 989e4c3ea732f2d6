"""Images in, one cached uint8 tensor out: sources (digits, synthetic, class folders, CSV),
decoding, the disk and memory cache, stratified splits, and batches sliced on the device.

Knows nothing of training, studies or notebooks."""
