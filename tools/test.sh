#!/usr/bin/env bash
# Runs every test of the collection: lint, sanity and units on both ends of the supported
# ansible-core range (2.19 on Python 3.11, 2.21 on Python 3.12), units of module code on
# Python 3.9 (RHEL 9's platform Python), the Molecule scenarios, the changelog lint, the
# documentation (ansible-doc, the role READMEs against their argument specs, antsibull-docs lint
# and the documentation site) and the built tarball through galaxy-importer, whose log must be clean.
#
# Every stage runs even when an earlier one fails; the last line counts test cases (pytest's
# own cases from the JUnit files, plus one per other check) as "N passed, N failed".
#
# Environment: STAGES="lint sanity units sandbox reliability molecule bench build ee docs changelog" to run a subset;
#              MOLECULE_SCENARIOS="image_list ..." to run only those scenarios.
set -uo pipefail
shopt -s nullglob

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1

bash tools/setup.sh || { echo "setup failed"; echo "total: 0 passed, 1 failed"; exit 1; }

STAGES="${STAGES:-lint sanity units sandbox reliability molecule bench build ee docs changelog}"
OUT="$ROOT/tests/output/run"
rm -rf "$OUT"
mkdir -p "$OUT/junit"
WORK="$(mktemp -d /tmp/airgap-microshift-test.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT

# pyenv's interpreters by their pythonX.Y names, so ansible-test finds every target Python.
if command -v pyenv >/dev/null 2>&1; then
    for dir in "$(pyenv root)"/versions/3.*/bin; do PATH="$dir:$PATH"; done
fi
export PATH="$ROOT/.venv/bin:$PATH"
export ANSIBLE_COLLECTIONS_PATH="$ROOT/.build/collections"
export ANSIBLE_FORCE_COLOR=0 PY_COLORS=0 ANSIBLE_NOCOLOR=1

checks_passed=0
checks_failed=0
failed_names=()

check() {
    # check NAME COMMAND...: runs one check, logs it, and tallies it.
    local name="$1"
    shift
    local log="$OUT/${name//[^A-Za-z0-9_.-]/_}.log"
    local started=$SECONDS
    printf '\n=== %s\n' "$name"
    if "$@" >"$log" 2>&1; then
        checks_passed=$((checks_passed + 1))
        printf -- '--- PASS %s (%ss)\n' "$name" "$((SECONDS - started))"
        tail -n 3 "$log"
    else
        checks_failed=$((checks_failed + 1))
        failed_names+=("$name")
        printf -- '--- FAIL %s (%ss); last lines of %s:\n' "$name" "$((SECONDS - started))" "$log"
        grep -v "^WARNING: Location" "$log" | tail -n 40
    fi
}

want() { [[ " $STAGES " == *" $1 "* ]]; }

layout() {
    # A copy of the collection in WORK/<tag>/ansible_collections/airgap/microshift.
    bash tools/layout.sh "$WORK/$1"
}

run_ansible_test() {
    # run_ansible_test VENV TAG ARGS...: ansible-test from VENV in a fresh layout copy.
    local venv="$1" tag="$2"
    shift 2
    local dir
    dir="$(layout "$tag")" || return 1
    (cd "$dir" && "$ROOT/$venv/bin/ansible-test" "$@" --color no)
    local rc=$?
    cp "$dir"/tests/output/junit/*.xml "$OUT/junit/" 2>/dev/null || true
    return $rc
}

if want lint; then
    check "ansible-lint (profile production)" ansible-lint --profile production --offline
fi

if want sanity; then
    # Without --python, compile and import run on every target Python (3.8/3.9 ... 3.13).
    check "sanity ansible-core 2.19" run_ansible_test .venv sanity-2.19 sanity --venv
    check "sanity ansible-core 2.21" run_ansible_test .venv-2.21 sanity-2.21 sanity --venv
fi

if want units; then
    check "units ansible-core 2.19 Python 3.11" run_ansible_test .venv units-2.19 units --venv --python 3.11 --num-workers 2
    check "units ansible-core 2.19 Python 3.9 (module code)" run_ansible_test .venv units-3.9 units --venv --python 3.9 --num-workers 2
    check "units ansible-core 2.21 Python 3.12" run_ansible_test .venv-2.21 units-2.21 units --venv --python 3.12 --num-workers 2
fi

if want sandbox; then
    # The test bed's own tests: registries, namespaces, the WAN proxy and the release generator.
    check "test bed self-tests" python -m pytest -p no:cacheprovider -q tests/sandbox/tests \
        --junitxml="$OUT/junit/sandbox.xml"
fi

if want reliability && [ -d tests/integration/reliability ]; then
    # Faults, crashes, full disks, bad input and secrets, on the test bed.
    check "reliability and security tests" python -m pytest -p no:cacheprovider -q tests/integration/reliability \
        --junitxml="$OUT/junit/reliability.xml"
fi

if want molecule; then
    scenarios="${MOLECULE_SCENARIOS:-$(cd extensions/molecule && for s in */molecule.yml; do dirname "$s"; done | sort)}"
    # Molecule names a scenario's ephemeral directory after the project folder's name, which is
    # "extensions" in every clone: two clones on one machine would share (and destroy) each
    # other's test beds. Each clone gets its own, at a stable path so that a scenario's destroy
    # finds what an interrupted run of the same clone left behind, and a short one (the test bed's
    # SSH control sockets live below it).
    molecule_dir="${TMPDIR:-/tmp}/amsb-molecule-$(printf '%s' "$ROOT" | sha256sum | cut -c1-8)"
    for scenario in $scenarios; do
        check "molecule $scenario" env MOLECULE_EPHEMERAL_DIRECTORY="$molecule_dir/$scenario" \
            bash -c "cd extensions && molecule test -s $scenario"
    done
fi

if want bench; then
    # The benchmark's plumbing on the tiny release (every mode, every part). Its figures are not
    # judged here: speed targets are read from the bench-size run documented in docs/benchmarks.md.
    check "benchmark smoke run (tiny)" python tests/benchmarks/run.py --size tiny --out "$WORK/bench" \
        --state-dir "$WORK/bench-sandbox"
fi

if want build; then
    build_and_import() {
        rm -f "$WORK"/airgap-microshift-*.tar.gz
        ansible-galaxy collection build --force --output-path "$WORK" . || return 1
        local tarball
        tarball="$(ls "$WORK"/airgap-microshift-*.tar.gz)"
        # galaxy-importer runs ansible-lint and ansible-test sanity on its own; those need the
        # collection's Python dependencies, which the importer's environment has.
        (cd "$WORK" && PATH="$ROOT/.venv-importer/bin:$PATH" "$ROOT/.venv-importer/bin/python" -m galaxy_importer.main "$tarball") \
            2>&1 | tee "$WORK/importer.log"
        [ "${PIPESTATUS[0]}" -eq 0 ] || { echo "galaxy-importer failed"; return 1; }
        # The import log is what Galaxy shows the collection's users: it must hold no warning.
        if grep -E "^\[?(WARNING|ERROR|CRITICAL)\b" "$WORK/importer.log"; then
            echo "galaxy-importer reported the lines above"
            return 1
        fi
    }
    check "collection build and galaxy-importer" build_and_import
fi

if want ee; then
    check_ee_context() {
        # The execution environment's build context, and what ansible-builder's introspection
        # finds in this collection (the dependencies an execution environment installs for it).
        local ctx="$WORK/ee-context"
        rm -rf "$ctx"
        ansible-builder create -f execution-environment.yml -c "$ctx" || return 1
        grep -q "install-from-bindep" "$ctx/Containerfile" || { echo "Containerfile installs no bindep packages"; return 1; }
        grep -q "^skopeo" "$ctx/_build/bindep.txt" || { echo "skopeo missing from the EE bindep.txt"; return 1; }
        grep -q "airgap.microshift" "$ctx/_build/requirements.yml" || { echo "the EE does not install airgap.microshift"; return 1; }
        python3 "$ctx/_build/scripts/introspect.py" introspect "$ROOT/.build/collections" > "$ctx/introspect.yml" || return 1
        cat "$ctx/introspect.yml"
        grep -q "skopeo.*from collection airgap.microshift" "$ctx/introspect.yml" || { echo "introspection misses skopeo"; return 1; }
        grep -q "jmespath.*from collection airgap.microshift" "$ctx/introspect.yml" || { echo "introspection misses jmespath"; return 1; }
    }
    check "execution environment build context (ansible-builder create)" check_ee_context
fi

if want docs; then
    render_docs() {
        local plugin role
        for plugin in plugins/modules/*.py; do
            plugin="$(basename "$plugin" .py)"
            ansible-doc "airgap.microshift.$plugin" >/dev/null || { echo "ansible-doc failed for $plugin"; return 1; }
            echo "module $plugin: ok"
        done
        for plugin in plugins/filter/*.py; do
            [ -e "$plugin" ] || continue
            grep -q "DOCUMENTATION" "$plugin" || continue
            plugin="$(basename "$plugin" .py)"
            ansible-doc -t filter "airgap.microshift.$plugin" >/dev/null || { echo "ansible-doc failed for filter $plugin"; return 1; }
        done
        for role in roles/*/; do
            role="$(basename "$role")"
            ansible-doc -t role "airgap.microshift.$role" >/dev/null || { echo "ansible-doc failed for role $role"; return 1; }
            echo "role $role: ok"
        done
        for plugin in plugins/callback/*.py; do
            plugin="$(basename "$plugin" .py)"
            ansible-doc -t callback "airgap.microshift.$plugin" >/dev/null || { echo "ansible-doc failed for callback $plugin"; return 1; }
            echo "callback $plugin: ok"
        done
    }
    check "ansible-doc renders every module, role and callback" render_docs
    # Each role's README.md is written from its meta/argument_specs.yml: it must not drift.
    check "role READMEs match their argument specs (tools/role_docs.py --check)" python tools/role_docs.py --check
    check "antsibull-docs lint-collection-docs --plugin-docs" \
        antsibull-docs lint-collection-docs --plugin-docs "$ANSIBLE_COLLECTIONS_PATH/ansible_collections/airgap/microshift"
    # The documentation site, built offline into .build/docsite (not committed).
    check "documentation site (antsibull-docs sphinx-init + Sphinx)" bash tools/docsite.sh
fi

if want changelog; then
    check "antsibull-changelog lint" antsibull-changelog lint
fi

# Count: every pytest case from the JUnit files, plus every other check.
read -r junit_passed junit_failed < <(python3 - "$OUT/junit" <<'EOF'
import glob
import sys
import xml.etree.ElementTree as ET

passed = failed = 0
for path in glob.glob(sys.argv[1] + "/*.xml"):
    for case in ET.parse(path).getroot().iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            failed += 1
        elif case.find("skipped") is None:
            passed += 1
print(passed, failed)
EOF
)
echo
echo "checks: ${checks_passed} passed, ${checks_failed} failed"
echo "pytest cases (from JUnit): ${junit_passed} passed, ${junit_failed} failed"
for name in "${failed_names[@]}"; do echo "FAILED: $name"; done
total_passed=$((checks_passed + junit_passed))
total_failed=$((checks_failed + junit_failed))
echo "total: ${total_passed} passed, ${total_failed} failed"
[ "$total_failed" -eq 0 ] && [ "$total_passed" -gt 0 ]
