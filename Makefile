# The two entry points. Both install what they need (Debian packages, virtual environments)
# and can be run any number of times.
.PHONY: demo test setup lint docs clean

demo: setup
	bash tools/demo.sh

test:
	bash tools/test.sh

setup:
	bash tools/setup.sh

lint: setup
	PATH="$(CURDIR)/.venv/bin:$$PATH" ANSIBLE_COLLECTIONS_PATH="$(CURDIR)/.build/collections" ansible-lint --profile production --offline

# Rewrites the role READMEs from their argument specs, then builds the documentation site
# into .build/docsite/build/html.
docs: setup
	$(CURDIR)/.venv/bin/python tools/role_docs.py
	bash tools/docsite.sh

clean:
	rm -rf .build tests/output
