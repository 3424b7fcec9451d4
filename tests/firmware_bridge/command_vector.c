/* A firmware's view of the mpq dialect: encode or decode the shared MPQ_COMMAND test vector with the
 * C headers generated from firmware_bridge/mpq.xml (tests/firmware_bridge/test_interop.py drives it). */
#include <stdio.h>
#include <string.h>

#include "mpq/mavlink.h"

static int encode(void) {
    mavlink_message_t msg;
    const float u[8] = {1.5f, -0.25f, 0, 0, 0, 0, 0, 0};
    mavlink_msg_mpq_command_pack(255, 191, &msg, 123456789ULL, 42, 41, 1, u);
    uint8_t buf[MAVLINK_MAX_PACKET_LEN];
    uint16_t len = mavlink_msg_to_send_buffer(buf, &msg);
    for (uint16_t i = 0; i < len; i++) printf("%02x", buf[i]);
    printf("\n");
    return 0;
}

static int decode(void) {
    char hex[2 * MAVLINK_MAX_PACKET_LEN + 2];
    if (!fgets(hex, sizeof hex, stdin)) return 2;
    mavlink_message_t msg;
    mavlink_status_t status;
    for (size_t i = 0; hex[2 * i] && hex[2 * i] != '\n'; i++) {
        unsigned int byte;
        if (sscanf(hex + 2 * i, "%2x", &byte) != 1) return 2;
        if (mavlink_parse_char(MAVLINK_COMM_0, (uint8_t)byte, &msg, &status) == MAVLINK_FRAMING_OK) {
            if (msg.msgid != MAVLINK_MSG_ID_MPQ_COMMAND) return 3;
            mavlink_mpq_command_t command;
            mavlink_msg_mpq_command_decode(&msg, &command);
            printf("%llu %u %u %u %.9g %.9g %u %u\n", (unsigned long long)command.time_us, command.seq,
                   command.state_seq, command.act_dim, command.u[0], command.u[1], msg.sysid, msg.compid);
            return 0;
        }
    }
    return 1;
}

int main(int argc, char **argv) {
    if (argc == 2 && strcmp(argv[1], "encode") == 0) return encode();
    if (argc == 2 && strcmp(argv[1], "decode") == 0) return decode();
    fprintf(stderr, "usage: %s encode|decode\n", argv[0]);
    return 2;
}
