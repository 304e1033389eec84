"""What clients send: request bodies received in chunks under a size limit (``receiving``), images
checked and decoded (``decoding``), zip archives checked and unpacked (``archives``) and batch uploads,
one submission per sample of a zip (``batches``)."""
