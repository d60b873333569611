"""Other bounds: naive products, LipSDP on the unrolled net, the empirical lower bound."""
