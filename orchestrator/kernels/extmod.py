"""The external-module build tree of a kernel built here: what Debian's linux-headers holds.

``pokelab build-kernel`` reuses its source copy and ``O=`` directory for the
next build, so a module cannot be built against them later.  At registration
the files an out-of-tree module build needs are copied into the kernel's own
directory (``kernels/custom-<id>/build``), following the kernel's own
``scripts/package/builddeb`` (``install_kernel_headers``, 6.1): from the
source tree the Makefiles, ``include/``, ``scripts/`` and the arch's include
and scripts directories; from the build the generated headers, the host
tools, ``Module.symvers``, objtool when configured, and ``.config``.
``make -C <build> M=<module dir> modules`` then works as with a headers package.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ..core.errors import InfraError
from ..host import procs

ARCH = "x86"
COPY_TIMEOUT_S = 600.0

# the lists of builddeb's install_kernel_headers, run with the kernel's own find semantics
_SRC_FILES = (
    "find . arch/$ARCH -maxdepth 1 -name 'Makefile*'; "
    "find include scripts -type f -o -type l; "
    "find arch/$ARCH -name Kbuild.platforms -o -name Platform; "
    "find $(find arch/$ARCH -name include -o -name scripts -type d) -type f"
)
_OBJ_FILES = (
    "if [ \"$OBJTOOL\" = y ]; then echo tools/objtool/objtool; fi; "
    "find arch/$ARCH/include Module.symvers include scripts -type f"
)
_COPY = 'sh -c "$LIST" | tar -c -f - -T - | tar -x -f - -C "$DEST"'


def objtool_enabled(config_text: str) -> bool:
    """Whether the build's .config has CONFIG_OBJTOOL=y (then modules need objtool).  Pure."""
    return "\nCONFIG_OBJTOOL=y\n" in f"\n{config_text}\n"


def install(tree: Path, out: Path, dest: Path) -> Path:
    """Copy the external-module build files of ``tree`` (source) + ``out`` (O= build) into ``dest``."""
    config = out / ".config"
    if not config.is_file() or not (out / "Module.symvers").is_file():
        raise InfraError(f"{out} is not a finished kernel build (no .config or Module.symvers)")
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    env = {"ARCH": ARCH, "DEST": str(tmp),
           "OBJTOOL": "y" if objtool_enabled(config.read_text()) else "n"}
    exports = " ".join(f"{k}={v!r}" for k, v in env.items())
    for where, files in ((tree, _SRC_FILES), (out, _OBJ_FILES)):
        procs.run(["sh", "-c", f"set -e; export {exports}; LIST={files!r}; {_COPY}"], cwd=where,
                  timeout=COPY_TIMEOUT_S, what=f"copying the module build files from {where}")
    shutil.copyfile(config, tmp / ".config")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest
