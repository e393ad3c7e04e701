"""pokelab: QEMU+GDB live-kernel test orchestrator for x86 text_poke int3 emulation."""

__version__ = "0.1.0"
