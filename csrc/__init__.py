"""C++/CUDA sources of the synfiqa ops, shipped as package data and JIT-compiled at run time."""
