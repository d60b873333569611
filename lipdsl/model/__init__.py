"""The network as systems: typed.Network -> lowered.Network (state space, FIR algebra), forward pass."""
