# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Writes each role's README.md from its meta/argument_specs.yml and meta/main.yml.

    python tools/role_docs.py            # rewrite roles/*/README.md
    python tools/role_docs.py --check    # fail when a README differs from what it would write
    python tools/role_docs.py download   # only these roles

A README has the shape of linux-system-roles' READMEs: the role's purpose, requirements, every
variable of every entry point (type, default, choices, description), the variables the role
exports, an example playbook, license and author. The variables, the entry points, the platforms,
the license and the author are generated; the sections between ``<!-- BEGIN name -->`` and
``<!-- END name -->`` are written by hand and kept as they are. ``--check`` also fails when the
exported variables listed by hand are not exactly the public facts and registered results the
role's tasks set, or when a hand-written section still holds its placeholder.

Needs PyYAML and antsibull-docs-parser (requirements-dev.txt; both are in .venv).
"""

from __future__ import annotations

import argparse
import difflib
import glob
import os
import re
import sys

try:
    import yaml
    from antsibull_docs_parser import dom
    from antsibull_docs_parser.format import Formatter, format_paragraphs
    from antsibull_docs_parser.parser import Context, parse
except ImportError as exc:  # pragma: no cover - depends on the interpreter used
    sys.exit("tools/role_docs.py needs PyYAML and antsibull-docs-parser (%s): run it with .venv/bin/python" % exc)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLLECTION = "airgap.microshift"
PLACEHOLDER = "(to be written)"
HAND_SECTIONS = ("intro", "requirements", "exported", "examples")
_SECTION = re.compile(r"<!-- BEGIN (?P<name>[a-z]+)[^>]*-->\n(?P<body>.*?)<!-- END (?P=name) -->", re.DOTALL)
_EXPORTED_NAME = re.compile(r"^[-*] `([A-Za-z_][A-Za-z0-9_]*)`", re.MULTILINE)
_FACT_MODULES = ("ansible.builtin.set_fact", "set_fact")


def code(text):
    """``text`` as Markdown inline code."""
    if "`" in text:
        return "`` %s ``" % text
    return "`%s`" % text


class _MarkdownFormatter(Formatter):
    """Ansible's documentation markup (C(), O(), V(), M() ...) as plain GitHub Markdown."""

    @staticmethod
    def _text(text):
        text = text.replace("\\", "\\\\").replace("*", "\\*").replace("`", "\\`")
        return text.replace("<", "&lt;").replace(">", "&gt;").replace("[", "\\[").replace("]", "\\]")

    def format_error(self, part):
        raise ValueError("invalid markup: %s" % part.message)

    def format_bold(self, part):
        return "**%s**" % self._text(part.text)

    def format_code(self, part):
        return code(part.text)

    def format_horizontal_line(self, part):
        return "\n\n---\n\n"

    def format_italic(self, part):
        return "*%s*" % self._text(part.text)

    def format_link(self, part):
        return "[%s](%s)" % (self._text(part.text), part.url)

    def format_module(self, part, url):
        return code(part.fqcn)

    def format_rst_ref(self, part):
        return self._text(part.text)

    def format_url(self, part):
        return "<%s>" % part.url

    def format_text(self, part):
        return self._text(part.text)

    def format_env_variable(self, part):
        return code(part.name)

    def format_option_name(self, part, url):
        return code(part.name if part.value is None else "%s=%s" % (part.name, part.value))

    def format_option_value(self, part):
        return code(part.value)

    def format_plugin(self, part, url):
        return code(part.plugin.fqcn)

    def format_return_value(self, part, url):
        return code(part.name if part.value is None else "%s=%s" % (part.name, part.value))


def markdown(text, role, entry="main"):
    """A description (a string or a list of paragraphs) in Ansible markup, as Markdown paragraphs."""
    context = Context(current_plugin=dom.PluginIdentifier(fqcn="%s.%s" % (COLLECTION, role), type="role"), role_entrypoint=entry)
    paragraphs = parse(text if isinstance(text, list) else [text], context, errors="exception")
    return format_paragraphs(paragraphs, formatter=_MarkdownFormatter(), par_sep="\n\n",
                             postprocess_paragraph=lambda par: " ".join(par.split()))


def _yaml_value(value):
    if isinstance(value, str):
        return value if value else '""'
    return yaml.safe_dump(value, default_flow_style=True, width=1000).strip().removesuffix("\n...").strip()


def _type_of(spec):
    kind = spec.get("type", "str")
    if kind == "list" and spec.get("elements"):
        return "list of %s" % spec["elements"]
    return kind


def _variable(name, spec, role):
    out = ["### %s" % name, "", markdown(spec.get("description", ""), role), ""]
    facts = ["- type: `%s`" % _type_of(spec)]
    if spec.get("required"):
        facts.append("- required: yes")
    elif "default" in spec:
        facts.append("- default: %s" % code(_yaml_value(spec["default"])))
    else:
        facts.append("- default: none")
    if spec.get("choices"):
        facts.append("- choices: %s" % ", ".join(code(_yaml_value(c)) for c in spec["choices"]))
    if spec.get("no_log"):
        facts.append("- hidden from logs (`no_log`)")
    return out + facts + [""]


def _entry_points(role, specs):
    main = specs.get("main", {})
    out = []
    for name, spec in specs.get("main", {}).get("options", {}).items():
        out += _variable(name, spec, role)
    others = [name for name in specs if name != "main"]
    if others:
        out += ["### Other entry points", ""]
        for entry in others:
            spec = specs[entry]
            out += ["#### `%s`: %s" % (entry, markdown(spec.get("short_description", ""), role, entry)), ""]
            if spec.get("description"):
                out += [markdown(spec["description"], role, entry), ""]
            out += ["`tasks_from: %s`. Its variables:" % entry, ""]
            for name, option in spec.get("options", {}).items():
                if option == main.get("options", {}).get(name):
                    out.append("- `%s`, as above" % name)
                else:
                    if option.get("required"):
                        default = "required"
                    elif "default" in option:
                        default = "default %s" % code(_yaml_value(option["default"]))
                    else:
                        default = "no default"
                    description = markdown(option.get("description", ""), role, entry)
                    out.append("- `%s` (`%s`, %s): %s" % (name, _type_of(option), default, description))
            out.append("")
    return out


def _platforms(meta):
    out = []
    for platform in meta.get("galaxy_info", {}).get("platforms") or []:
        versions = ", ".join(str(v) for v in platform.get("versions") or [])
        out.append("%s %s" % (platform["name"], versions) if versions else platform["name"])
    return out


def _section(name, sections, hint):
    body = sections.get(name)
    if body is None:
        body = "%s %s\n" % (PLACEHOLDER, hint)
    return ["<!-- BEGIN %s (written by hand; tools/role_docs.py keeps it) -->" % name, body.rstrip("\n"), "<!-- END %s -->" % name]


def render(role, existing):
    """The README of ``role``: generated parts from its metadata, hand-written sections from ``existing``."""
    role_dir = os.path.join(ROOT, "roles", role)
    with open(os.path.join(role_dir, "meta", "argument_specs.yml"), encoding="utf-8") as handle:
        specs = (yaml.safe_load(handle) or {}).get("argument_specs", {})
    with open(os.path.join(role_dir, "meta", "main.yml"), encoding="utf-8") as handle:
        meta = yaml.safe_load(handle) or {}
    with open(os.path.join(ROOT, "meta", "runtime.yml"), encoding="utf-8") as handle:
        requires_ansible = (yaml.safe_load(handle) or {}).get("requires_ansible", "")
    sections = {m.group("name"): m.group("body") for m in _SECTION.finditer(existing or "")}
    info = meta.get("galaxy_info", {})
    main = specs.get("main", {})

    out = [
        "<!-- Generated by tools/role_docs.py from meta/argument_specs.yml and meta/main.yml: edit the",
        "     sections between BEGIN and END by hand, the rest in those files, then run the script. -->",
        "# %s.%s" % (COLLECTION, role),
        "",
        markdown(main.get("short_description", ""), role) + ".",
        "",
    ]
    out += _section("intro", sections, "what the role does and how, for a newcomer")
    out += ["", "## Requirements", ""]
    out.append("- ansible-core %s on the control node" % code(requires_ansible))
    platforms = _platforms(meta)
    if platforms:
        out.append("- managed hosts: %s" % "; ".join(platforms))
    out.append("")
    out += _section("requirements", sections, "what the hosts need beyond the platforms above")
    out += ["", "## Role Variables", ""]
    out.append("Checked before any task runs (`meta/argument_specs.yml`); also shown by "
               "`ansible-doc -t role %s.%s`." % (COLLECTION, role))
    out.append("")
    out += _entry_points(role, specs)
    out += ["## Exported variables", ""]
    out += _section("exported", sections, "every fact and registered result the role sets for later tasks")
    out += ["", "## Example Playbook", ""]
    out += _section("examples", sections, "a runnable example")
    out += ["", "## License", "", ", ".join(info.get("license") if isinstance(info.get("license"), list) else [info.get("license", "")]), ""]
    out += ["## Author", "", str(info.get("author", "")), ""]
    return "\n".join(out)


def _walk_tasks(tasks, names):
    for task in tasks or []:
        if not isinstance(task, dict):
            continue
        for key in ("block", "rescue", "always"):
            _walk_tasks(task.get(key), names)
        for module in _FACT_MODULES:
            if isinstance(task.get(module), dict):
                names.update(name for name in task[module] if name != "cacheable")
        if isinstance(task.get("register"), str):
            names.add(task["register"])


def exported_by_tasks(role):
    """Facts and registered results the role's tasks set that later tasks may use (no ``__`` prefix)."""
    names = set()
    for path in sorted(glob.glob(os.path.join(ROOT, "roles", role, "tasks", "*.yml"))):
        with open(path, encoding="utf-8") as handle:
            _walk_tasks(yaml.safe_load(handle), names)
    return {name for name in names if not name.startswith("_")}


def problems(role, text):
    """What --check reports beyond a stale README: placeholders, and exported variables that drifted."""
    found = []
    sections = {m.group("name"): m.group("body") for m in _SECTION.finditer(text)}
    for name in HAND_SECTIONS:
        if PLACEHOLDER in sections.get(name, PLACEHOLDER):
            found.append("roles/%s/README.md: write the %s section (it still says %r)" % (role, name, PLACEHOLDER))
    listed = set(_EXPORTED_NAME.findall(sections.get("exported", "")))
    actual = exported_by_tasks(role)
    for name in sorted(actual - listed):
        found.append("roles/%s/README.md: the role sets %s, which the exported variables section does not list" % (role, name))
    for name in sorted(listed - actual):
        found.append("roles/%s/README.md: the exported variables section lists %s, which no task of the role sets" % (role, name))
    return found


def main(argv=None):
    parser = argparse.ArgumentParser(description="Write or check the roles' README.md files.")
    parser.add_argument("--check", action="store_true", help="change nothing; fail when a README is not what this script writes")
    parser.add_argument("roles", nargs="*", help="role names (default: every role)")
    args = parser.parse_args(argv)
    roles = args.roles or sorted(os.path.basename(os.path.dirname(os.path.dirname(p)))
                                 for p in glob.glob(os.path.join(ROOT, "roles", "*", "meta", "argument_specs.yml")))
    failures = []
    for role in roles:
        path = os.path.join(ROOT, "roles", role, "README.md")
        existing = ""
        if os.path.exists(path):
            with open(path, encoding="utf-8") as handle:
                existing = handle.read()
        try:
            text = render(role, existing)
        except (OSError, ValueError, yaml.YAMLError) as exc:
            failures.append("roles/%s: %s" % (role, exc))
            continue
        if args.check:
            if text != existing:
                diff = difflib.unified_diff(existing.splitlines(), text.splitlines(), "roles/%s/README.md" % role, "generated", lineterm="", n=1)
                failures.append("roles/%s/README.md differs from its meta/argument_specs.yml; run: python tools/role_docs.py %s\n%s"
                                % (role, role, "\n".join(list(diff)[:40])))
            failures += problems(role, existing)
        else:
            if text != existing:
                with open(path, "w", encoding="utf-8") as handle:
                    handle.write(text)
                print("wrote roles/%s/README.md" % role)
            failures += problems(role, text)
    for failure in failures:
        print(failure, file=sys.stderr)
    if not failures:
        print("%d role README%s up to date" % (len(roles), "" if len(roles) == 1 else "s"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
