/* Exits at once: a process that lives well under a millisecond. */
int main(void) { return 3; }
