# Thin aliases for the two scripts; the scripts are the source of truth.
.PHONY: test quickstart
test:
	./run-tests $(ARGS)
quickstart:
	./quickstart
