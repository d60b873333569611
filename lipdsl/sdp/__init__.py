"""The dissipativity SDP: lowered.Network -> Sdp (LMIs as F0 + sum_k x_k F_k), decompositions."""
