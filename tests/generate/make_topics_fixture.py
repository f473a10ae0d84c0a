"""Regenerate tests/generate/fixtures/topic_replies.json: raw topic-list replies of the real
SmolLM2-135M-Instruct (the packaged GGUF), asked through `TopicList.request` exactly as a
topics recipe asks them (seed 0, the first REPLIES topic requests of each task).

    PYTHONPATH=. python tests/generate/make_topics_fixture.py
"""

import json
from pathlib import Path

FIXTURE = Path(__file__).parent / "fixtures" / "topic_replies.json"
TASKS = ("trec", "sms_spam", "movie_sentiment")
REPLIES = 16


def main() -> None:
    from jaxdiv import assets
    from jaxdiv.generate.backends import JaxBackend
    from jaxdiv.generate.recipes import BRIEFS, TopicList
    from jaxdiv.generate.sampler import JaxGenerator
    from jaxdiv.models.checkpoints import load_pretrained, weights_hash

    gguf = assets.resolve("smollm2-135m-instruct") / "SmolLM2-135M-Instruct.Q4_1.gguf"
    model, tokenizer = load_pretrained(gguf)
    backend = JaxBackend(JaxGenerator(model, tokenizer, batch_buckets=(16,), prompt_buckets=(128,)),
                         "jax:smollm2-135m-instruct", weights_hash(gguf))
    replies = []
    for task in TASKS:
        topic_list = TopicList(task, backend, seed=0, brief=BRIEFS[task], directory="/nonexistent")
        requests = [topic_list.request(k) for k in range(REPLIES)]
        for k, completion in enumerate(backend.complete(requests)):
            replies.append({"task": task, "request": k, "text": completion.text})
    FIXTURE.write_text(json.dumps({"generator": backend.generator_id, "weights_hash": backend.weights_hash,
                                   "seed": 0, "replies": replies}, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
