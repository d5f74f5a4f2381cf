"""Model protection: Azaion-compatible AES-256-CBC, key derivation, hardware fingerprint, split."""
