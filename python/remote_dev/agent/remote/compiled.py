"""A copy of the agent's zip with bytecode compiled for the interpreter running it.

zipimport reads bytecode from a zip but never writes any, so every interpreter importing
the agent from its zip of sources compiles each module it imports, on every start.  So,
once per interpreter (cache tag), the agent writes COMPILED_ZIP beside AGENT_ZIP: the same
files plus, for each module, an unchecked hash-based .pyc (PEP 552: valid without looking
at the source, which never changes under it: the folder is named by the content's hash).
The bootstrap imports that copy when it exists, and supervisors start from it.  Another
interpreter that finds it (a different cache tag never does) would fall back to the
sources in it: zipimport checks the magic number.
"""

import os
import sys

from .. import protocol as P


def agent_dir():
    """The folder of the zip this agent was imported from."""
    top = sys.modules[__name__.split(".")[0]]
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(top.__file__))))


def compiled_path(folder):
    tag = getattr(sys.implementation, "cache_tag", None)
    return os.path.join(folder, P.COMPILED_ZIP % tag) if tag else None


def launch_zip():
    """The zip to start a new agent process (a supervisor) from: the compiled copy when
    there is one, else the sources."""
    folder = agent_dir()
    fast = compiled_path(folder)
    if fast is not None and os.path.isfile(fast):
        return fast
    return os.path.join(folder, P.AGENT_ZIP)


def build(src, dst):
    """Write dst: src's entries plus a .pyc for each .py, compiled by this interpreter;
    written to a temporary name and renamed into place."""
    import importlib.util
    import marshal
    import struct
    import zipfile

    tmp = "%s.tmp%d" % (dst, os.getpid())
    try:
        with zipfile.ZipFile(src) as zin, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zout:
            for info in zin.infolist():
                data = zin.read(info)
                zout.writestr(info, data)
                if not info.filename.endswith(".py"):
                    continue
                code = compile(data, dst + "/" + info.filename, "exec", dont_inherit=True)
                pyc = (importlib.util.MAGIC_NUMBER + struct.pack("<I", 0b01)  # hash-based, unchecked
                       + importlib.util.source_hash(data) + marshal.dumps(code))
                pinfo = zipfile.ZipInfo(info.filename + "c", info.date_time)
                pinfo.external_attr = info.external_attr
                zout.writestr(pinfo, pyc)
        os.rename(tmp, dst)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def ensure():
    """Build the compiled copy for this interpreter if it is missing (once per agent
    version and interpreter: ~50 ms); a failure (read-only or full disk) only costs speed."""
    folder = agent_dir()
    src = os.path.join(folder, P.AGENT_ZIP)
    dst = compiled_path(folder)
    if dst is None or os.path.isfile(dst) or not os.path.isfile(src):
        return
    try:
        build(src, dst)
    except Exception:  # noqa: BLE001 - the sources still work
        pass
