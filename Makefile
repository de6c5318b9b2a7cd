# `make docs`: README.md and docs/ from the notebooks, then the HTML site in site/ (open site/index.html).
.PHONY: docs site

docs:
	python .ci/make_docs.py
	python .ci/build_site.py

site:
	python .ci/build_site.py
