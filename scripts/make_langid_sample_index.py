"""Write src/perturbmerge/data/splits/langid-sample.json: the `langid` word sample as line numbers into the pinned
word lists, so a fresh machine reads only those lines (`perturbmerge data fetch langid-words` first):

    .venv/bin/python scripts/make_langid_sample_index.py
"""
from perturbmerge.data.fetch import require
from perturbmerge.data.langid import write_sample_index

if __name__ == "__main__":
    (folder,) = require("langid-words")
    print(write_sample_index(str(folder)))
