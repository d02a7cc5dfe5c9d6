"""The whole-study button's pieces without a browser: the time left and the zero-shot line."""

from __future__ import annotations

from lora_demo.ui.train import time_left
from lora_demo.ui.whole_study import score_markdown


def test_time_left_comes_from_the_measured_speed_of_the_steps_so_far():
    assert time_left(0, 189, 5.0) == "time left: measuring"  # no step timed yet (the model was loading)
    assert time_left(10, 30, 20.0) == "about 60 s left"  # 30 steps at 2 s
    assert time_left(9, 180, 27.0) == "about 9 min left"  # 180 steps at 3 s
    assert time_left(189, 0, 300.0) == "about 0 s left"


def test_the_zero_shot_line_names_the_model_the_reviews_and_a_collapse():
    metrics = {"n": 1000, "accuracy": 0.7461, "f1": 0.766}
    line = score_markdown("minilm", metrics)
    assert line == "**Zero-shot `minilm`** on 1000 test reviews: accuracy **0.746**, F1 (positive) 0.766."
    collapsed = score_markdown("t5-small", {**metrics, "warning": "It predicted only negative."})
    assert collapsed.endswith("⚠️ It predicted only negative.")


def test_a_session_makes_one_study_when_the_page_load_and_a_first_click_race(monkeypatch):
    """The cause of the whole study's bare "Error": the page's load event and "Run the whole study", in different
    concurrency groups, each found no study yet and made one; the run trained in one and exported from the other."""
    import threading
    import time

    import lora_demo.study as study_module
    from lora_demo.ui.session import SessionData

    made = []

    class SlowStudy:
        def __init__(self, *args, **kwargs):
            time.sleep(0.2)  # a Study's first making imports torch and the data modules: seconds on a cold start
            made.append(self)

    monkeypatch.setattr(study_module, "Study", SlowStudy)
    session = SessionData()
    seen = []
    threads = [threading.Thread(target=lambda: seen.append(session.study)) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(made) == 1 and seen[0] is seen[1] is session.study
