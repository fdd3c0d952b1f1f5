from gates.smoke_checks import Check, SmokeReport, predictions_match

EXPECTED = {"predictions": ["Yes", "No", "No"], "probabilities": [0.9, 0.2, 0.1]}


def test_identical_answers_pass():
    assert predictions_match(EXPECTED, ["Yes", "No", "No"], [0.9, 0.2, 0.1]).passed


def test_a_changed_label_fails_and_names_the_record():
    check = predictions_match(EXPECTED, ["Yes", "Yes", "No"], [0.9, 0.2, 0.1])
    assert not check.passed and "record 1" in check.detail


def test_a_changed_probability_fails():
    check = predictions_match(EXPECTED, ["Yes", "No", "No"], [0.9, 0.2, 0.1001])
    assert not check.passed and "record 2" in check.detail


def test_a_short_answer_fails():
    assert not predictions_match(EXPECTED, ["Yes"], None).passed


def test_report_needs_at_least_one_check_and_all_passing():
    assert not SmokeReport("1", "x").passed
    report = SmokeReport("1", "x", [Check("a", True, "ok"), Check("b", False, "bad")])
    assert not report.passed and report.summary() == "b: bad"
    assert "❌ Smoke failed" in report.to_markdown()
