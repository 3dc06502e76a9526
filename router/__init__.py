"""gpulet router: the HTTP front door, placement and dispatch."""
