"""Neural style transfer (Gatys et al. 2016): feature networks, the three losses, and the optimisation loop."""
