"""Package metadata comes from settings.ini (nbdev 2). No pkg_resources: it is gone from current setuptools."""
from configparser import ConfigParser
from pathlib import Path
import setuptools

here = Path(__file__).parent
cfg = ConfigParser(delimiters=['='])
cfg.read(here / 'settings.ini', encoding='utf-8')
cfg = cfg['DEFAULT']

def reqs(key): return cfg.get(key, '').split()

licenses = {'apache2': 'Apache-2.0'}
statuses = ['1 - Planning', '2 - Pre-Alpha', '3 - Alpha', '4 - Beta', '5 - Production/Stable']
min_python = cfg['min_python']
py_versions = ['3.10', '3.11', '3.12', '3.13']
readme = here / 'README.md'

extras = {name: reqs(f'{name}_requirements') for name in ('gpu', 'vllm', 'agents', 'cluster')}
extras['dev'] = reqs('dev_requirements') + extras['agents'] + extras['cluster']

setuptools.setup(
    name=cfg['lib_name'], version=cfg['version'], description=cfg['description'],
    long_description=readme.read_text(encoding='utf-8') if readme.exists() else cfg['description'],
    long_description_content_type='text/markdown',
    author=cfg['author'], author_email=cfg['author_email'], license=licenses[cfg['license']],
    url=cfg['git_url'], keywords=cfg['keywords'].split(),
    classifiers=[f'Development Status :: {statuses[int(cfg["status"]) - 1]}',
                 'Natural Language :: English'] +
                [f'Programming Language :: Python :: {v}' for v in py_versions[py_versions.index(min_python):]],
    packages=setuptools.find_packages(include=['swebench_lab', 'swebench_lab.*']),
    include_package_data=True, package_data={'swebench_lab': ['*.yaml', 'scaffolds/*.yaml', 'configs/*.yaml', 'demo/textkit/*.yaml', 'demo/textkit/*.diff', 'demo/textkit/tasks/*/*.diff']},
    install_requires=reqs('requirements'), extras_require=extras,
    python_requires=f'>={min_python}', zip_safe=False,
    entry_points={'console_scripts': cfg.get('console_scripts', '').split(),
                  'nbdev': [f'{cfg["lib_path"]}={cfg["lib_path"]}._modidx:d']},
)
