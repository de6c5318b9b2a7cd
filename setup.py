"""Packaging for minisiglip: every field comes from settings.ini, as in nbdev 2 projects."""
from configparser import ConfigParser
import re
import setuptools

config = ConfigParser(delimiters=['='])
config.read('settings.ini', encoding='utf-8')
cfg = config['DEFAULT']

licenses = {'apache2': ('Apache Software License 2.0', 'OSI Approved :: Apache Software License')}
statuses = ['1 - Planning', '2 - Pre-Alpha', '3 - Alpha', '4 - Beta', '5 - Production/Stable',
            '6 - Mature', '7 - Inactive']
py_versions = '3.9 3.10 3.11 3.12 3.13'.split()

lic = licenses[cfg['license'].lower()]
min_python = cfg['min_python']
requirements = cfg.get('requirements', '').split()
dev_requirements = cfg.get('dev_requirements', '').split()
hf_requirements = cfg.get('hf_requirements', '').split()   # transformers' own tokenizer for Google's spiece.model folders
console_scripts = cfg.get('console_scripts', '').split()


def long_description() -> str:
    "README.md with its repository-relative links made absolute, so that they work on PyPI's page too."
    text = open('README.md', encoding='utf-8').read()
    absolute = lambda m: f"]({cfg['git_url']}/blob/{cfg['branch']}/{m[1]})"
    return re.sub(r'\]\((?!https?:|#|mailto:)([^)\s]+)\)', absolute, text)


setuptools.setup(
    name=cfg['lib_name'],
    version=cfg['version'],
    license=lic[0],
    classifiers=['Development Status :: ' + statuses[int(cfg['status'])],
                 'Intended Audience :: ' + cfg['audience'].title(),
                 'License :: ' + lic[1],
                 'Natural Language :: ' + cfg['language'].title()]
                + ['Programming Language :: Python :: ' + v for v in py_versions[py_versions.index(min_python):]],
    url=cfg['git_url'],
    packages=setuptools.find_packages(include=['minisiglip', 'minisiglip.*']),
    include_package_data=True,
    install_requires=requirements,
    extras_require={'dev': dev_requirements + hf_requirements, 'hf': hf_requirements},
    python_requires='>=' + min_python,
    long_description=long_description(),
    long_description_content_type='text/markdown',
    zip_safe=False,
    entry_points={'console_scripts': console_scripts, 'nbdev': [f"{cfg['lib_path']}={cfg['lib_path']}._modidx:d"]},
    author=cfg['author'],
    author_email=cfg['author_email'],
    description=cfg['description'],
    keywords=cfg['keywords'],
)
