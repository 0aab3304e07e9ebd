"""weakseg_nishimura: the Nishimura-1 detection-response baseline and seeded watershed."""
