"""bias: who the corpus talks about, how, and whether the filters treat them alike.

Everything is driven by lexicon files in ``configs/lexicons/`` that users extend:

- ``lexicons``: reading the term lists and matching them in text;
- ``filter``: the bias stage (after pii): mention counts, toxicity, and what it drops;
- ``audit``: the data card's bias section (representation, filter fairness).

The counterfactual probes that evaluate a trained model live in tasks/train/probes.py.
"""
