"""Answer quality: speak each question, run the agent on a real local fleet
(:mod:`fleet.evaluation.evaluate`) and score every stage against the ground truth
(:mod:`fleet.evaluation.scoring`)."""
