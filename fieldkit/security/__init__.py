"""Keys, authenticated encryption, TLS material, accounts and audit (layer 1)."""
