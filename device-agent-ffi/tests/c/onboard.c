/* A device's firmware in C: onboards through the agent's C API and says how it went.
 * Usage: onboard IDENTITY_DIR STATE_DIR SERVER */
#include <stdio.h>

#include "device_agent.h"

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s IDENTITY_DIR STATE_DIR SERVER\n", argv[0]);
        return 2;
    }
    DaAgent *agent = NULL;
    DaStatus status = da_agent_new(argv[1], argv[2], argv[3], &agent);
    if (status != DA_STATUS_OK) {
        fprintf(stderr, "da_agent_new: status %d\n", (int)status);
        return 1;
    }
    status = da_agent_onboard(agent);
    if (status != DA_STATUS_OK) {
        fprintf(stderr, "da_agent_onboard: status %d: %s\n", (int)status,
                da_agent_last_error(agent));
        da_agent_free(agent);
        return 1;
    }
    printf("onboarded %s\n", da_agent_serial(agent));
    da_agent_free(agent);
    return 0;
}
