"""Kernels: the catalog, Debian's archive, fetched and built images, the initramfs, kernel builds,
out-of-tree modules (pokelab_ops, the livepatch), the guest load generator.  Imports core and host.
"""
