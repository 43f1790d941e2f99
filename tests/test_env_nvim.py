""":RemoteEnv in a real headless Neovim: with setup()'s defaults the mirror is made after
the first connection, a real basedpyright (from PyPI, its own Node) enabled the ordinary way
resolves a package installed only in the target's python into it, the mirror's buffers are
read-only, and an nvim-dap breakpoint in a mirrored library file stops :RemoteDebug there."""
from __future__ import annotations

import ast
import os
import sys
from pathlib import Path

import pytest
from conftest import require, wait_for

from support.env_python import editable_install, fresh_env, more_itertools_python, site_packages

LANGSERVER = Path(sys.executable).parent / "basedpyright-langserver"
MAIN = "import more_itertools\n\nprint('got', more_itertools.one([7]))\n"

DEFINITION = """
local line, col = ...
local params = vim.lsp.util.make_position_params(0, 'utf-16')
params.position = { line = line, character = col }
-- pcall: a client restarting (jedi-language-server getting the mirror) may stop mid-request
local ok, res = pcall(vim.lsp.buf_request_sync, 0, 'textDocument/definition', params, 5000)
res = ok and res or {}
local out = {}
for _, r in pairs(res) do
  local locs = r.result and (r.result[1] and r.result or { r.result }) or {}
  for _, loc in ipairs(locs) do
    if loc.uri or loc.targetUri then
      local range = loc.range or loc.targetSelectionRange
      table.insert(out, { file = vim.uri_to_fname(loc.uri or loc.targetUri), line = range.start.line })
    end
  end
end
return out
"""


def start_basedpyright(nvim):
    require(LANGSERVER.exists(), f"basedpyright not installed in the venv ({LANGSERVER}); scripts/setup installs it")
    nvim.exec_lua("""
      _G.rd_setup({})   -- the plugin's setup(), its defaults (tests/minimal_init.lua)
      vim.lsp.config('basedpyright', { cmd = { ..., '--stdio' }, filetypes = { 'python' },
        root_markers = { '.remote-dev.toml' } })
      vim.lsp.enable('basedpyright')
    """, str(LANGSERVER))


def definition_in(nvim, file: Path, col: int):
    """The definition of the name at line 3, col of the buffer, when one lands in file."""
    return next((loc for loc in nvim.exec_lua(DEFINITION, 2, col) if loc["file"] == str(file)), None)


def body_line(path: str, name: str) -> int:
    """The first line of the body of function name (after its docstring), 1-based."""
    tree = ast.parse(Path(path).read_text())
    func = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == name)
    body = func.body[1:] if isinstance(func.body[0], ast.Expr) and isinstance(func.body[0].value, ast.Constant) \
        else func.body
    return body[0].lineno


def test_basedpyright_definition_read_only_buffer_and_library_breakpoint(nvim, dap, make_project):
    python, why = more_itertools_python()
    require(python is not None, why)
    proj = make_project(target={"python": str(python)})
    main = proj.write("main.py", MAIN)
    start_basedpyright(nvim)
    nvim.open(proj.root, main)
    nvim.command("RemoteStatus")                       # connects: the mirror comes by itself
    data = nvim.wait_event("RemoteDevEnv", 120)
    assert nvim.exec_lua("return require('remote_dev').env_paths()") == data["paths"]
    site = site_packages(python)
    mirror = Path(data["paths"][data["remotes"].index(str(site))])
    more = mirror / "more_itertools" / "more.py"
    col = MAIN.splitlines()[2].index("one")

    loc = wait_for(lambda: definition_in(nvim, more, col), 60, 0.5,
                   what=f"basedpyright's definition of more_itertools.one in {more}")
    assert more.read_bytes() == (site / "more_itertools" / "more.py").read_bytes()
    assert "def one(" in more.read_text().splitlines()[loc["line"]]
    # the mirror's buffer: read-only, and :w says why
    nvim.command(f"edit {more}")
    assert nvim.eval("&modifiable") == 0
    # a file still: the language server serves it too (definitions within the library)
    wait_for(lambda: nvim.exec_lua("return #vim.lsp.get_clients({ bufnr = 0 })") > 0, 30,
             what="basedpyright attached to the mirror's buffer")
    assert nvim.eval("b:remote_dev_mirror") == str(site / "more_itertools" / "more.py")
    nvim.command("silent! write")
    assert any("read-only :RemoteEnv mirror" in m for m in nvim.messages()), nvim.messages()
    # a breakpoint on the first line of one's body stops a debug run there
    line = body_line(str(more), "one")
    dap.breakpoint(more, line)
    nvim.command(f"edit {main}")
    nvim.command(f"RemoteDebug {python} main.py")
    frame = dap.stopped(1, 120)
    assert (frame["path"], frame["line"]) == (str(more), line), frame
    # one put into another library file during the session: told that justMyCode hides it
    recipes = more.parent / "recipes.py"
    dap.breakpoint(recipes, body_line(str(recipes), "take"))
    wait_for(lambda: any("recipes.py is library code" in m for m in nvim.messages()), 15,
             what=f"the justMyCode note; messages {nvim.messages()[-3:]}")
    dap.clear_breakpoints()
    dap.continue_()
    ex = nvim.wait_event("RemoteDevRunExit", 90)
    assert ex["code"] == 0
    assert os.stat(more).st_mode & 0o222 == 0              # the files themselves are read-only


def test_a_server_started_after_the_mirror_gets_it_and_an_unknown_one_is_named(nvim, make_project):
    python, why = more_itertools_python()
    require(python is not None, why)
    proj = make_project(target={"python": str(python)})
    main = proj.write("main.py", MAIN)
    nvim.exec_lua("_G.rd_setup({})   -- the plugin's setup(), its defaults (tests/minimal_init.lua)")
    nvim.open(proj.root, main)
    nvim.command("RemoteStatus")
    data = nvim.wait_event("RemoteDevEnv", 120)
    more = Path(data["paths"][data["remotes"].index(str(site_packages(python)))]) / "more_itertools" / "more.py"
    start_basedpyright(nvim)                 # after the mirror: LspAttach gives it the paths
    # the same server under a name and program remote_dev does not know
    nvim.exec_lua("""
      vim.lsp.start({ name = 'other', cmd = { '/bin/sh', '-c', 'exec "$0" --stdio', ... },
        root_dir = vim.fs.root(0, '.remote-dev.toml') })
    """, str(LANGSERVER))
    col = MAIN.splitlines()[2].index("one")
    wait_for(lambda: definition_in(nvim, more, col), 60, 0.5, what=f"the definition in {more}")
    other = nvim.exec_lua("""
      local c = vim.lsp.get_clients({ name = 'other' })[1]
      return c and vim.inspect(c.settings) or 'no client'""")
    assert "extraPaths" not in other and other != "no client"
    nvim.command("checkhealth remote_dev")
    text = "\n".join(nvim.current.buffer[:])
    assert "language server other is not one remote_dev knows" in text, text
    assert "language server basedpyright gets the :RemoteEnv mirror" in text, text


@pytest.mark.parametrize("name, program", [("pylsp", "pylsp"), ("jedi_language_server", "jedi-language-server")])
def test_jedi_servers_resolve_into_the_mirror(nvim, make_project, name, program):
    """pylsp takes the paths as settings (didChangeConfiguration); jedi-language-server only
    at its start, so the one running before the mirror is restarted with them."""
    python, why = more_itertools_python()
    require(python is not None, why)
    exe = Path(sys.executable).parent / program
    require(exe.exists(), f"{program} not installed in the venv ({exe}); scripts/setup installs it")
    proj = make_project(target={"python": str(python)})
    main = proj.write("main.py", MAIN)
    nvim.exec_lua("""
      local name, exe = ...
      _G.rd_setup({})   -- the plugin's setup(), its defaults (tests/minimal_init.lua)
      vim.lsp.config(name, { cmd = { exe }, filetypes = { 'python' }, root_markers = { '.remote-dev.toml' } })
      vim.lsp.enable(name)
    """, name, str(exe))
    nvim.open(proj.root, main)
    wait_for(lambda: nvim.exec_lua("return #vim.lsp.get_clients({ bufnr = 0 })") > 0, 30, what=f"{name} attached")
    assert nvim.exec_lua(DEFINITION, 2, MAIN.splitlines()[2].index("one")) == []    # not resolvable here
    nvim.command("RemoteStatus")
    data = nvim.wait_event("RemoteDevEnv", 120)
    site = site_packages(python)
    pkg = Path(data["paths"][data["remotes"].index(str(site))]) / "more_itertools"
    col = MAIN.splitlines()[2].index("one")

    def landed():
        return next((loc for loc in nvim.exec_lua(DEFINITION, 2, col)
                     if Path(loc["file"]).parent == pkg), None)
    loc = wait_for(landed, 60, 0.5, what=f"{name}'s definition of more_itertools.one in {pkg}")
    rel = Path(loc["file"]).relative_to(pkg.parent)
    assert Path(loc["file"]).read_bytes() == (site / rel).read_bytes()


def test_a_run_that_installs_a_package_brings_it_into_the_mirror(nvim, make_project, tmp_path):
    python = fresh_env(tmp_path / "venv")
    site = site_packages(python)
    proj = make_project(target={"python": str(python)})
    # what `pip install` does to site-packages, done by a run on the target
    main = proj.write("install.py", "import os, sys\nd = os.path.join(sys.argv[1], 'fresh_pkg')\n"
                                    "os.makedirs(d)\nopen(os.path.join(d, '__init__.py'), 'w').write('X = 1\\n')\n")
    nvim.exec_lua("_G.rd_setup({})   -- the plugin's setup(), its defaults (tests/minimal_init.lua)")
    nvim.open(proj.root, main)
    nvim.command("RemoteStatus")
    first = nvim.wait_event("RemoteDevEnv", 120)
    nvim.command(f"RemoteRun {python} install.py {site}")
    nvim.wait_event("RemoteDevRunExit", 60)
    data = nvim.wait_event("RemoteDevEnv", 60, pred=lambda d: d["files"] == first["files"] + 1)
    local = Path(data["paths"][data["remotes"].index(str(site))])
    assert (local / "fresh_pkg" / "__init__.py").read_text() == "X = 1\n"
    assert str(local) in nvim.exec_lua("return require('remote_dev').env_paths()")


def test_an_editable_packages_mirror_buffer_knows_its_remote_file(nvim, make_project, tmp_path):
    python = fresh_env(tmp_path / "venv")
    lib = tmp_path / "corp-lib"
    (lib / "corp").mkdir(parents=True)
    (lib / "corp" / "__init__.py").write_text("def shard(n):\n    return n % 4\n")
    (lib / "pyproject.toml").write_text('[build-system]\nrequires = ["setuptools>=64"]\n'
                                        'build-backend = "setuptools.build_meta"\n'
                                        '[project]\nname = "corp"\nversion = "0.1"\n'
                                        '[tool.setuptools]\npackages = ["corp"]\n')
    editable_install(python, lib, tmp_path / "dist")
    proj = make_project(target={"python": str(python)})
    main = proj.write("main.py", "import corp\n")
    nvim.exec_lua("_G.rd_setup({})   -- the plugin's setup(), its defaults (tests/minimal_init.lua)")
    nvim.open(proj.root, main)
    nvim.command("RemoteEnv")
    data = nvim.wait_event("RemoteDevEnv", 120)
    local = Path(data["paths"][data["remotes"].index(str(lib / "corp"))]) / "corp" / "__init__.py"
    nvim.command(f"edit {local}")
    assert nvim.eval("b:remote_dev_mirror") == str(lib / "corp" / "__init__.py")
    assert nvim.eval("&modifiable") == 0
