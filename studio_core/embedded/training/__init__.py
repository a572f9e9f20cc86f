"""Making the embedded emoji model: data, tokenizer, recipes, training, evaluation and its model card."""
