# `make docs`: README.md and docs/ from the notebooks, then the HTML site in site/ (open site/index.html).
# `make dist`: the sdist and wheel in dist/, checked with twine (what the release workflow uploads).
.PHONY: docs site dist

docs:
	python .ci/make_docs.py
	python .ci/build_site.py

site:
	python .ci/build_site.py

dist:
	rm -rf dist
	python -m build
	python -m twine check --strict dist/*
