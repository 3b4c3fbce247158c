"""deepgate's logic: plain typed functions and classes. Never imports prefect."""
